"""node.genesis: founding member set signed by every member, bound to key event logs."""

from __future__ import annotations

import pytest

from identity import canonical, records
from identity.soft import SoftSigner
from node import genesis


def founder(i: int):
    cur, nxt = SoftSigner(bytes([i]) * 32), SoftSigner(bytes([100 + i]) * 32)
    icp = records.incept(cur, nxt.public_key, issued_at=1_700_000_000)
    member = genesis.member_from_kel([icp.to_bytes()], [f"/ip4/127.0.0.1/tcp/{4000 + i}"])
    return cur, member


def make(n: int = 4):
    founders = [founder(i) for i in range(1, n + 1)]
    members = [m for _, m in founders]
    body = genesis.build_body("testnet", 1_700_000_100, members)
    sigs = {m.peer_id: genesis.sign_body(s, body) for s, m in founders}
    return founders, body, sigs


def test_round_trip_and_members_map():
    founders, body, sigs = make()
    g = genesis.verify(genesis.encode_file(body, sigs))
    assert g.chain == "testnet" and len(g.members) == 4
    assert [m.peer_id for m in g.members] == sorted(m.peer_id for _, m in founders)
    assert g.members_map() == {m.peer_id: s.public_key for s, m in founders}
    assert g.member(founders[0][1].peer_id).addrs == ("/ip4/127.0.0.1/tcp/4001",)


def test_missing_extra_and_bad_signatures_are_refused():
    founders, body, sigs = make()
    missing = dict(list(sigs.items())[:3])
    with pytest.raises(genesis.GenesisError, match="every member"):
        genesis.verify(genesis.encode_file(body, missing))
    stranger, _ = founder(9)
    forged = {**sigs, founders[0][1].peer_id: genesis.sign_body(stranger, body)}
    with pytest.raises(genesis.GenesisError, match="bad genesis signature"):
        genesis.verify(genesis.encode_file(body, forged))


def test_member_must_match_its_key_event_log():
    founders, body, sigs = make()
    obj = canonical.decode(body)
    obj["members"][0]["key"] = founder(9)[0].public_key  # claims a key its KEL does not name
    tampered = canonical.encode(obj)
    with pytest.raises(genesis.GenesisError, match="does not match"):
        genesis.verify(genesis.encode_file(tampered, sigs))


@pytest.mark.parametrize("data", [b"", b"\x00", canonical.encode({"body": b"x"}),
                                  canonical.encode({"body": b"\x80", "signatures": {}})])
def test_garbage_is_a_genesis_error(data):
    with pytest.raises(genesis.GenesisError):
        genesis.verify(data)


def test_duplicate_members_refused():
    _, m = founder(1)
    with pytest.raises(genesis.GenesisError, match="duplicate"):
        genesis.build_body("x", 1, [m, m])


def test_protocol_parameters_travel_in_the_genesis():
    founders = [founder(i) for i in range(1, 5)]
    members = [m for _, m in founders]
    body = genesis.build_body("t", 1, members, checkpoint_interval=8)
    sigs = {m.peer_id: genesis.sign_body(s, body) for s, m in founders}
    g = genesis.verify(genesis.encode_file(body, sigs))
    assert (g.checkpoint_interval, g.window) == (8, 32)
    with pytest.raises(genesis.GenesisError, match="multiple of checkpoint_interval"):
        genesis.build_body("t", 1, members, checkpoint_interval=8, window=12)
