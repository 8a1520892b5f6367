"""Manifests, the [plugins] config section, capabilities and the RPC frame checks (pure)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from plugins_testkit import make_author

from identity import canonical, records
from identity.soft import SoftSigner
from plugins import config as pconfig
from plugins.capabilities import Capability, CapabilityError, missing, parse_capabilities
from plugins.manifest import (
    ManifestError,
    ManifestSource,
    code_digest,
    load_source,
    sign_manifest,
    verify_manifest,
)
from plugins.protocol import parse_from_host, parse_from_plugin, protocol_id

SOURCE = ManifestSource("demo", "1.2.3", frozenset({"tasks", "kv"}), "a demo")
CODE = hashlib.sha256(b"code").digest()


def test_sign_and_verify_round_trip():
    a = make_author(b"a")
    m = verify_manifest(sign_manifest(SOURCE, signer=a.signer, kel=a.events, code=CODE))
    assert (m.name, m.version, m.author, m.capabilities, m.code) == (
        "demo", "1.2.3", a.identifier, frozenset({"tasks", "kv"}), CODE)
    assert m.author_key == a.signer.public_key


def test_a_rotated_author_signs_with_the_new_key():
    cur = SoftSigner(b"\x01" * 32)
    nxt = SoftSigner(b"\x02" * 32)
    new_next = SoftSigner(b"\x03" * 32)
    icp = records.incept(cur, nxt.public_key, issued_at=10)
    rot = records.rotate([icp], nxt, new_next.public_key, issued_at=11)
    data = sign_manifest(SOURCE, signer=nxt, kel=[icp, rot], code=CODE)
    assert verify_manifest(data).author == icp.identifier
    with pytest.raises(ManifestError, match="not the author's current key"):
        sign_manifest(SOURCE, signer=cur, kel=[icp, rot], code=CODE)


def test_revoked_authors_are_refused_also_when_resolved_later():
    a = make_author(b"r")
    data = sign_manifest(SOURCE, signer=a.signer, kel=a.events, code=CODE)
    revoked = records.verify_log(a.events)._replace(revoked=True)
    with pytest.raises(ManifestError) as info:
        verify_manifest(data, resolve=lambda author: revoked)
    assert info.value.reason == "revoked"


@pytest.mark.parametrize("mutate, reason", [
    (lambda o: o.update(sig=bytes(64)), "bad_signature"),
    (lambda o: o.update(kel=[]), "bad_kel"),
    (lambda o: o.update(v=2), "malformed"),
    (lambda o: o.update(body=b"\xc1"), "malformed"),
])
def test_tampered_manifests_are_refused(mutate, reason):
    a = make_author(b"t")
    outer = canonical.decode(sign_manifest(SOURCE, signer=a.signer, kel=a.events, code=CODE))
    mutate(outer)
    with pytest.raises(ManifestError) as info:
        verify_manifest(canonical.encode(outer))
    assert info.value.reason == reason


def test_garbage_is_malformed_not_a_crash():
    for data in (b"", b"\x00" * 10, canonical.encode({"v": 1})):
        with pytest.raises(ManifestError):
            verify_manifest(data)


def test_code_digest_covers_python_files_only(tmp_path):
    (tmp_path / "a.py").write_text("x = 1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2")
    d = code_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.py").write_text("junk")
    (tmp_path / "plugin.manifest").write_bytes(b"sig")
    assert code_digest(tmp_path) == d
    (tmp_path / "sub" / "b.py").write_text("y = 3")
    assert code_digest(tmp_path) != d


def test_load_source_errors_name_the_problem(tmp_path):
    p = tmp_path / "plugin.toml"
    p.write_text('name = "x"\nversion = "1"\ncapabilities = ["tasks", "root"]\n')
    with pytest.raises(ManifestError, match="unknown capability 'root'"):
        load_source(p)
    p.write_text('name = "Bad Name"\nversion = "1"\n')
    with pytest.raises(ManifestError, match="invalid plugin name"):
        load_source(p)
    p.write_text('name = "ok"\nversion = "1"\nextra = 1\n')
    with pytest.raises(ManifestError, match="unknown key 'extra'"):
        load_source(p)


def test_config_shape_and_errors():
    cfg = pconfig.parse({"cpu_seconds": 60, "hasher": {"author": "mid:Iabc",
                                                       "grants": ["tasks", "kv"],
                                                       "memory_mb": 128}})
    g = cfg.grants["hasher"]
    assert g.capabilities == {Capability.TASKS, Capability.KV}
    assert (g.limits.cpu_seconds, g.limits.memory_mb) == (60, 128)
    assert pconfig.parse(cfg.to_toml()) == cfg
    assert pconfig.parse({}).grants == {}
    assert pconfig.parse({"paths": ["/opt/plugins"]}).paths == ("/opt/plugins",)
    bad = [
        ({"h": {"grants": ["tasks"]}}, "plugins.h.author is required"),
        ({"h": {"author": "mid:I", "grants": ["sudo"]}}, "unknown capability 'sudo'"),
        ({"h": {"author": "bob"}}, "must be a 'mid:...' identifier"),
        ({"h": {"author": "*", "colour": 1}}, "unknown key plugins.h.colour"),
        ({"cpu_seconds": 0}, "positive integer"),
        ({"nonsense": 1}, "unknown key plugins.nonsense"),
        ({"Bad": {"author": "*"}}, "invalid plugin name"),
        ({"paths": ["relative/dir"]}, "absolute directory names"),
    ]
    for table, msg in bad:
        with pytest.raises(ValueError, match=msg):
            pconfig.parse(table)


def test_capabilities():
    assert parse_capabilities(["kv", "tasks"]) == {Capability.KV, Capability.TASKS}
    with pytest.raises(CapabilityError, match="valid: tasks, kv, pubsub"):
        parse_capabilities(["kv", "disk"])
    assert missing({"kv", "propose", "tasks"}, {Capability.TASKS}) == ["kv", "propose"]
    assert protocol_id("hasher") == "/meshnode/plugin/hasher/1.0.0"
    with pytest.raises(ValueError):
        protocol_id("../x")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=5),
    max_leaves=12)
kinds = st.sampled_from(["hello", "result", "call", "log", "fatal", "task", "reply",
                         "message", "stop", "x"])


@given(values, kinds)
def test_frame_parsers_never_raise(value, kind):
    for v in (value, {"t": kind, **value} if isinstance(value, dict) else {"t": kind}):
        for parse in (parse_from_plugin, parse_from_host):
            out = parse(v)
            assert out is None or out is v


def test_frame_parsers_accept_exactly_the_documented_shapes():
    assert parse_from_plugin({"t": "result", "id": 1, "ok": True, "output": b""})
    assert parse_from_plugin({"t": "result", "id": 1, "ok": False, "reason": "r",
                              "retryable": True})
    assert not parse_from_plugin({"t": "result", "id": 1, "ok": True, "output": "str"})
    assert not parse_from_plugin({"t": "result", "id": -1, "ok": True, "output": b""})
    assert not parse_from_plugin({"t": "call", "id": 1, "method": "os.system", "args": {}})
    assert not parse_from_plugin({"t": "hello", "name": "x", "tasks": ["../../x"],
                                  "topics": [], "sandbox": "", "pid": 1})
    assert parse_from_host({"t": "stop"})
    assert not parse_from_host({"t": "stop", "extra": 1})


async def test_transport_pubsub_broadcasts_and_drops_garbage():
    from plugins.bridge import PluginMessage, TransportPubSub

    class FakeTransport:
        def __init__(self):
            self.out = []

        def connected_peers(self):
            return ["12D3a", "12D3b"]

        def send(self, peer, channel, payload):
            self.out.append((peer, channel, payload))
            return True

    t = FakeTransport()
    bridge = TransportPubSub(t)
    got = []
    unsubscribe = bridge.subscribe("/meshnode/plugin/x/1.0.0", got.append)
    await bridge.publish("/meshnode/plugin/x/1.0.0", "news", b"d")
    assert [(p, c) for p, c, _ in t.out] == [("12D3a", "/meshnode/plugin/x/1.0.0"),
                                             ("12D3b", "/meshnode/plugin/x/1.0.0")]
    bridge.on_inbound("12D3a", "/meshnode/plugin/x/1.0.0", t.out[0][2])
    bridge.on_inbound("12D3a", "/meshnode/plugin/x/1.0.0", b"\xc1")
    bridge.on_inbound("12D3a", "/meshnode/plugin/x/1.0.0", canonical.encode({"topic": 1}))
    assert got == [PluginMessage("/meshnode/plugin/x/1.0.0", "news", b"d", "12D3a")]
    assert bridge.dropped == 2
    unsubscribe()
    bridge.on_inbound("12D3a", "/meshnode/plugin/x/1.0.0", t.out[0][2])
    assert len(got) == 1
    cfg = pconfig.parse({"x": {"author": "*", "grants": ["pubsub"]},
                         "y": {"author": "*", "grants": ["tasks"]}})
    assert cfg.pubsub_protocols() == ["/meshnode/plugin/x/1.0.0"]
