"""node.config: defaults, round trip, and one-line errors for bad files."""

from __future__ import annotations

import pytest

from node import config


def test_defaults_round_trip(tmp_path):
    cfg = config.NodeConfig(home=tmp_path)
    cfg.network.bootstrap = ["/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWabc"]
    cfg.consensus.tick_ms = 5
    config.save(cfg)
    again = config.load(tmp_path)
    assert again.to_toml() == cfg.to_toml()
    assert again.path("genesis.msgpack") == tmp_path / "genesis.msgpack"
    assert again.path("/abs/x").as_posix() == "/abs/x"


def test_partial_file_keeps_defaults(tmp_path):
    (tmp_path / "config.toml").write_text("[metrics]\nlisten = ''\n")
    cfg = config.load(tmp_path)
    assert cfg.metrics.listen == "" and cfg.consensus.batch_size == 64


@pytest.mark.parametrize("text, message", [
    ("[netwerk]\nmdns = true\n", "unknown section [netwerk]"),
    ("[network]\nmdsn = true\n", "unknown key network.mdsn"),
    ("[network]\nmdns = 'yes'\n", "network.mdns must be bool"),
    ("[consensus]\ntick_ms = true\n", "consensus.tick_ms must be int"),
    ("[consensus]\ntick_ms = 0\n", "tick_ms must be positive"),
    ("[consensus]\nbatch_timeout_ms = -1\n", "batch_timeout_ms must be >= 0"),
    ("[storage]\nsynchronous = 'off'\n", "'full' or 'normal'"),
    ("[consensus]\nbatch_size = 5000\n", "batch_size must be at most 4096"),
    ("[network]\nmax_frame_bytes = 1048576\n", "max_frame_bytes must be at least 4194304"),
    ("[network]\nlisten = [1]\n", "network.listen must be list"),
    ("[network\n", "config.toml"),
])
def test_bad_files_name_the_problem(tmp_path, text, message):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        config.load(tmp_path)


def test_missing_file_says_run_init(tmp_path):
    with pytest.raises(config.ConfigError, match="meshnode init"):
        config.load(tmp_path)
