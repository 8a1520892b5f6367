"""A fifth node joins a running 4-node mesh by a committed, quorum-endorsed membership
operation (real processes, libp2p, SoftHSM), catches up, and then votes."""

from __future__ import annotations

import json

import pytest
from process_mesh import cli, start_all

from consensus.messages import decode_message
from node import config

pytestmark = pytest.mark.slow


def test_a_new_member_joins_by_committed_operation_and_then_votes(mesh, tmp_path):
    start_all(mesh)
    joiner = tmp_path / "joiner"
    boot = mesh.control(1, "status")["listen"][0]
    cli("init", "--home", str(joiner), "--genesis", str(mesh.root / "genesis.msgpack"),
        "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", boot, "--metrics", "")
    cfg = config.load(joiner)
    cfg.network.mdns = False
    config.save(cfg)
    mesh.add_home(5, joiner)
    info = mesh.start(5)
    peer = info["peer_id"][0]
    st = mesh.control(5, "status")
    assert st["member"] is False and st["n"] == 4
    refused = cli("propose", "too early", "--home", str(joiner), check=False)
    assert refused.returncode == 1 and "not a member" in refused.stderr  # it cannot sign

    endorsements = [cli("members", "endorse", peer, "--home", str(mesh.home(k))).stdout.strip()
                    for k in (1, 2, 3)]
    args = [x for e in endorsements for x in ("--endorsement", e)]
    refused = cli("members", "add", peer, "--home", str(mesh.home(1)), *args[:2], check=False)
    assert refused.returncode == 1 and "endors" in refused.stderr  # one is not a quorum
    out = cli("members", "add", peer, "--home", str(mesh.home(1)), *args).stdout
    assert "effective after" in out
    effective = int(out.rsplit(" ", 1)[1])
    while mesh.control(1, "status")["last_decided"] < effective + 2:
        mesh.control(2, "propose", {"op": b"advance"})
    last = mesh.control(3, "propose", {"op": b"with five"})["seq"]
    st = mesh.wait(5, last_decided=last)
    assert st["member"] is True and st["n"] == 5
    assert json.loads(cli("members", "list", "--json", "--home", str(mesh.home(4))).stdout)[
        "n"] == 5
    # The newcomer now signs COMMITs that end up in certificates.
    signers = set()
    for _ in range(10):
        seq = mesh.control(1, "propose", {"op": b"vote"})["seq"]
        mesh.wait(5, last_decided=seq)
        cert = mesh.control(5, "decision", {"seq": seq})["certificate"]
        signers |= {c.sender for c in decode_message(cert).commits}
    assert peer in signers
    mesh.stop_all()
