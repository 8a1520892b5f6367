"""Scenario files in the style of etcd raft's datadriven tests.

Each file in ``scenarios/`` is a list of blocks::

    command arg arg ...
    ----
    expected output (until a blank line)

The command runs against an in-memory cluster (:mod:`pbft_harness`) and its output must
match. ``REWRITE=1 pytest tests/consensus/test_scenarios.py`` regenerates the expected
outputs (review the diff!). Commands:

``net n=4 seed=1 [K=4 L=8 batch=2 timeout=10 resend=4]``  start a cluster
``byzantine r001=silent ...`` (``p0`` names the primary of view 0)   adversaries
``propose r001 op [op...]``         submit operations at a replica
``tick [n]`` / ``run until=decided max=N``  advance time (until every proposal decided)
``cut rX`` / ``heal``                partition a replica away / remove all filters
``drop kind=Commit [to=rX] [view=v]``  drop a message kind (to one replica, of one view)
``crash rX`` / ``restart rX``        stop a replica / rebuild it from its records
``status`` / ``decisions rX`` / ``safety``   print the cluster state
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pbft_harness import Net

from consensus.messages import batch_digest
from consensus.replica import Config

DIR = Path(__file__).parent / "scenarios"


def parse(text: str) -> list[tuple[str, str]]:
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].startswith("#"):
            i += 1
            continue
        cmd = lines[i].strip()
        assert lines[i + 1] == "----", f"line {i + 2}: expected ----"
        i += 2
        out = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append((cmd, "\n".join(out)))
    return blocks


class Runner:
    def __init__(self) -> None:
        self.net: Net | None = None
        self.proposed: list[bytes] = []

    def run(self, cmd: str) -> str:
        name, *args = cmd.split()
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        pos = [a for a in args if "=" not in a]
        return getattr(self, "do_" + name)(pos, kw) or "ok"

    def do_net(self, pos: list[str], kw: dict[str, str]) -> str:
        cfg = Config(checkpoint_interval=int(kw.get("K", 4)), window=int(kw.get("L", 8)),
                     batch_size=int(kw.get("batch", 2)), view_timeout=int(kw.get("timeout", 10)),
                     resend_interval=int(kw.get("resend", 4)))
        self.kw = (int(kw.get("n", 4)), int(kw.get("seed", 1)), cfg)
        self.net = Net(self.kw[0], seed=self.kw[1], config=cfg)
        return f"primary(0)={self.net.replicas['r000'].primary(0)}"

    def do_byzantine(self, pos: list[str], kw: dict[str, str]) -> str:
        n, seed, cfg = self.kw
        p0 = self.net.replicas["r000"].primary(0)
        byz = {(p0 if k == "p0" else k): v for k, v in kw.items()}
        self.net = Net(n, seed=seed, config=cfg, byzantine=byz)
        return " ".join(f"{k}={v}" for k, v in sorted(byz.items()))

    def do_propose(self, pos: list[str], kw: dict[str, str]) -> None:
        for op in pos[1:]:
            self.proposed.append(op.encode())
            self.net.propose(pos[0], op.encode())

    def do_tick(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.run(int(pos[0]) if pos else 1)

    def do_run(self, pos: list[str], kw: dict[str, str]) -> str:
        ticks = self.net.run(int(kw.get("max", 500)),
                             until=lambda: self.net.all_decided(self.proposed))
        return f"decided after {ticks} ticks"

    def do_cut(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.filters.append(lambda s, d, m, x=pos[0]: x not in (s, d))

    def do_drop(self, pos: list[str], kw: dict[str, str]) -> None:
        kind, to = kw["kind"], kw.get("to")
        view = int(kw["view"]) if "view" in kw else None

        def keep(s: str, d: str, m: object) -> bool:
            if type(m).__name__ != kind or (to is not None and d != to):
                return True
            return view is not None and getattr(m, "view", None) != view

        self.net.filters.append(keep)

    def do_heal(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.filters.clear()

    def do_crash(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.crash(pos[0])

    def do_restart(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.restart(pos[0])

    def do_status(self, pos: list[str], kw: dict[str, str]) -> str:
        rows = []
        for i in self.net.ids:
            r = self.net.replicas[i]
            state = "down" if i in self.net.down else ("view-change" if r.in_view_change
                                                      else "normal")
            rows.append(f"{i}: view={r.view} {state} executed={r.last_executed} low={r.low}")
        return "\n".join(rows)

    def do_decisions(self, pos: list[str], kw: dict[str, str]) -> str:
        rows = []
        for seq, d in sorted(self.net.decided[pos[0]].items()):
            ops = ",".join(q.op.decode() for q in d.batch.requests) or "(null)"
            rows.append(f"{seq}: view={d.certificate.view} "
                        f"{batch_digest(d.batch).hex()[:8]} {ops}")
        return "\n".join(rows) or "(none)"

    def do_safety(self, pos: list[str], kw: dict[str, str]) -> str:
        self.net.check_safety()
        return "ok: agreement and valid certificates"


@pytest.mark.parametrize("path", sorted(DIR.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    blocks = parse(path.read_text())
    runner = Runner()
    got = [(cmd, runner.run(cmd)) for cmd, _ in blocks]
    if os.environ.get("REWRITE"):
        text = path.read_text()
        header = "".join(line + "\n" for line in text.splitlines()
                         if line.startswith("#")) if text.startswith("#") else ""
        path.write_text(header + "\n\n".join(f"{c}\n----\n{o}" for c, o in got) + "\n")
        return
    for (cmd, want), (_, out) in zip(blocks, got, strict=True):
        assert out == want, f"{path.name}: {cmd}\n--- want\n{want}\n--- got\n{out}"
