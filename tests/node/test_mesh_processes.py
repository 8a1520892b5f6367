"""A real mesh: `meshnode testnet` homes, one `meshnode start` process per node, real
libp2p on 127.0.0.1, real SoftHSM tokens, sqlite. Waiting is event-driven: the node's
control API `wait` blocks until a condition holds (with a deadline), and start-up is
read from the process's stdout.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from process_mesh import cli, start_all

pytestmark = pytest.mark.slow


def test_four_processes_commit_100_operations_with_identical_logs(mesh, tmp_path):
    start_all(mesh)
    seqs = [mesh.control(1 + i % 4, "propose", {"op": b"op-%03d" % i})["seq"]
            for i in range(100)]
    last = max(seqs)
    statuses = [mesh.wait(k, last_decided=last) for k in range(1, 5)]
    assert len({s["state_digest"] for s in statuses}) == 1
    # Identical decided logs: the same decided value at every sequence number, held by a
    # quorum at least (a replica that caught up by state transfer skips a range).
    logs = [{e[0]: e[2] for e in mesh.audit(k)} for k in range(1, 5)]
    for seq in range(1, last + 1):
        held = [log[seq] for log in logs if seq in log]
        assert len(held) >= 3 and len(set(held)) == 1, seq
    export = tmp_path / "audit.msgpack"
    full = next(k for k in range(1, 5) if len(logs[k - 1]) == last)  # a quorum is complete
    cli("audit", "export", "--home", str(mesh.home(full)), "--out", str(export))
    out = cli("audit", "verify", str(export), "--home", str(mesh.home(3))).stdout
    assert f"valid: {last} decisions" in out
    cert = mesh.home(1) / "data" / "certificates" / f"{seqs[0]:012d}.cert"
    assert cli("decision", "verify", str(cert), "--home", str(mesh.home(4))).returncode == 0
    # op-000 went in through node 1, which signed the request as its origin
    shown = json.loads(cli("decision", "show", str(seqs[0]), "--ops", "--json",
                           "--home", str(mesh.home(2))).stdout)
    node1 = json.loads(cli("identity", "show", "--home", str(mesh.home(1)),
                           "--json").stdout)["peer_id"]
    assert "op-000" in shown["ops"] and node1 in shown["submitted_by"]
    bad = tmp_path / "bad.cert"
    data = bytearray(cert.read_bytes())
    data[-10] ^= 1
    bad.write_bytes(bytes(data))
    proc = cli("decision", "verify", str(bad), "--home", str(mesh.home(4)), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("meshnode: error:")
    mesh.stop_all()


def test_identities_are_published_in_the_dht_and_verified_on_lookup(mesh):
    start_all(mesh)
    for k in range(1, 5):
        mesh.control(k, "wait", {"published": True, "timeout_ms": 60_000}, timeout_s=90)
    target = mesh.control(3, "status")
    found = json.loads(cli("dht", "lookup", target["peer_id"], "--home", str(mesh.home(1)),
                           "--json").stdout)
    assert found["id"] == target["id"] and found["peer_id"] == target["peer_id"]
    assert found["record"]["listen_addrs"] == [target["listen"][0].split("/p2p/")[0]]
    assert mesh.control(1, "status")["dht"]["routing_table"] >= 3
    stranger = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    proc = cli("dht", "lookup", stranger, "--home", str(mesh.home(2)), check=False)
    assert proc.returncode == 1 and "no identity record" in proc.stderr
    mesh.stop_all()


def test_kill_9_a_replica_mid_run_then_restart_it_catches_up(mesh):
    start_all(mesh)
    status = mesh.control(1, "status")
    victim = next(k for k in range(1, 5)
                  if mesh.control(k, "status")["peer_id"] != status["primary"])
    others = [k for k in range(1, 5) if k != victim]
    for i in range(10):
        mesh.control(others[i % 3], "propose", {"op": b"before-%d" % i})
    mesh.kill(victim)  # SIGKILL: no chance to flush anything
    for i in range(10):
        mesh.control(others[i % 3], "propose", {"op": b"while-down-%d" % i})
    mesh.start(victim)
    last = mesh.control(others[0], "propose", {"op": b"after"})["seq"]
    st = mesh.wait(victim, last_decided=last)
    assert st["state_digest"] == mesh.wait(others[0], last_decided=last)["state_digest"]
    # No replica holds equivocation evidence: the restarted one never contradicted itself.
    assert all(mesh.control(k, "status")["evidence"] == 0 for k in range(1, 5))
    mesh.stop_all()


def test_killing_the_primary_changes_view_and_the_mesh_keeps_committing(mesh):
    start_all(mesh)
    mesh.control(1, "propose", {"op": b"first"})
    primary = mesh.control(1, "status")["primary"]
    pk = next(k for k in range(1, 5) if mesh.control(k, "status")["peer_id"] == primary)
    mesh.kill(pk)
    survivor = pk % 4 + 1
    seq = mesh.control(survivor, "propose", {"op": b"after the primary died"})["seq"]
    st = mesh.wait(survivor, last_decided=seq)
    assert st["view"] >= 1 and st["primary"] != primary


def test_sigterm_shuts_down_cleanly(mesh):
    info = mesh.start(1)
    assert info["peer_id"][0].startswith("12D3KooW") and info["did"][0].startswith("did:key:")
    assert mesh.kill(1, signal.SIGTERM) == 0
    assert not (mesh.home(1) / "control.sock").exists()
    log = (mesh.root / "node1.log").read_text()
    assert "SIGTERM received" in log and "node stopped" in log and "Traceback" not in log
    proc = cli("status", "--home", str(mesh.home(1)), check=False)
    assert proc.returncode == 1 and "no node is running" in proc.stderr
    assert json.loads(cli("identity", "show", "--home", str(mesh.home(1)), "--json").stdout)
    assert os.stat(mesh.home(1) / "data" / "node.db").st_size > 0


async def test_garbage_and_oversized_frames_from_a_raw_peer_are_dropped_and_counted(mesh):
    import multiaddr
    import trio
    from libp2p import generate_new_ed25519_identity
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from consensus.messages import Prepare, encode_message
    from node.transport.host import LibP2PTransport, protocol_id

    start_all(mesh)
    addr = mesh.control(1, "status")["listen"][0]
    raw = LibP2PTransport(generate_new_ed25519_identity(), ["/ip4/127.0.0.1/tcp/0"],
                          ["consensus"])
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(raw.run)
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            await raw.host.connect(info)
            for junk in (b"\xc1", b"not msgpack at all", b"\x92\x01"):
                raw.send(info.peer_id.to_base58(), "consensus", junk)
            forged = Prepare(0, 1, bytes(32), raw.peer_id, sig=bytes(64))
            raw.send(info.peer_id.to_base58(), "consensus", encode_message(forged))
            stream = await raw.host.new_stream(info.peer_id, [protocol_id("consensus")])
            await stream.write((50 * 1024 * 1024).to_bytes(4, "big") + b"x" * 64)
            # Each status call is a round trip to the node; the counters are read until
            # every frame has been accounted for (bounded by fail_after).
            st = await trio.to_thread.run_sync(lambda: mesh.control(1, "status"))
            while st["undecodable"] < 3 or not st["refused"] or not st["dropped"]:
                st = await trio.to_thread.run_sync(lambda: mesh.control(1, "status"))
            nursery.cancel_scope.cancel()
    assert st["undecodable"] == 3
    assert st["dropped"].get("oversized") == 1
    assert sum(st["refused"].values()) >= 1
    # The node is unharmed: the mesh still commits.
    assert mesh.control(1, "propose", {"op": b"still alive"})["seq"] >= 1
    mesh.stop_all()


def test_local_and_mesh_tasks_run_and_each_mesh_task_has_one_accepted_result(mesh):
    import hashlib

    from identity.did import public_key_from_peer_id
    from identity.signer import verify_signature
    from node.tasks.meshops import result_signing_bytes

    start_all(mesh)
    local = mesh.control(1, "task.submit", {"type": "echo", "input": b"ping", "wait": True})
    assert local["state"] == "succeeded" and local["output"] == b"ping"
    out = json.loads(cli("task", "submit", "sha256", "--input", '"hello"', "--mesh", "--wait",
                         "--json", "--home", str(mesh.home(2))).stdout)
    assert out["state"] == "done"
    accepted = out["accepted"]
    digest = hashlib.sha256(b'"hello"').hexdigest()
    assert accepted["output"] == digest and accepted["ok"] is True
    # The executor signed its result with its HSM key: check it with its public key.
    signed = result_signing_bytes(out["id"], accepted["attempt"], accepted["node"], True, False,
                                  digest.encode(), "")
    sig = bytes.fromhex(accepted["sig"].removeprefix("hex:"))
    assert verify_signature(public_key_from_peer_id(accepted["node"]), signed, sig)
    # Every node agrees on the one accepted result and on who produced it (once each
    # has executed the decision that accepted it).
    for k in range(1, 5):
        mesh.wait(k, last_decided=accepted["seq"])
    views = [mesh.control(k, "task.wait", {"id": out["id"], "timeout_ms": 60_000},
                          timeout_s=90) for k in range(1, 5)]
    assert len({(v["accepted"]["node"], v["accepted"]["seq"]) for v in views}) == 1
    proc = cli("task", "submit", "no-such-type", "--input", "1", "--wait", "--home",
               str(mesh.home(3)), check=False)
    assert proc.returncode == 1 and "no handler" in proc.stdout + proc.stderr
    mesh.stop_all()
