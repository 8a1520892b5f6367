"""The example plugin end to end on a 4-process testnet: installed (on a private site
directory), its manifest signed by an HSM-backed author identity, granted in every
node's config, and a `hasher.sha256` task submitted with --mesh on one node runs in the
plugin's sandboxed process on the assigned node; the signed result is committed and
every node accepts the same one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from process_mesh import cli, start_all

from node import config
from plugins import config as plugins_config

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "hasher"


def install_example(site: Path) -> Path:
    """Copy the example package and write its dist-info (what pip would install)."""
    pkg = site / "meshnode_hasher"
    shutil.copytree(EXAMPLE / "meshnode_hasher", pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "plugin.manifest"))
    dist = site / "meshnode_hasher-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: meshnode-hasher\n"
                                   "Version: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[meshnode.plugins]\nhasher = meshnode_hasher.plugin:plugin\n")
    return pkg


def test_example_plugin_task_runs_on_the_mesh_with_one_signed_result(mesh, tmp_path):
    author_home = tmp_path / "author"
    cli("identity", "enroll", "--home", str(author_home))
    author = json.loads(cli("identity", "show", "--home", str(author_home),
                            "--json").stdout)["id"]
    site = tmp_path / "site"
    pkg = install_example(site)
    cli("plugin", "sign", str(pkg / "plugin.toml"), "--home", str(author_home))
    for k in range(1, 5):
        cfg = config.load(mesh.home(k))
        cfg.plugins = plugins_config.parse({
            "paths": [str(site)],
            "hasher": {"author": author, "grants": ["tasks", "kv", "log"]},
        })
        config.save(cfg)
    start_all(mesh)
    listing = json.loads(cli("plugin", "list", "--home", str(mesh.home(1)), "--json").stdout)
    assert any(p.get("name") == "hasher" for p in listing), listing

    data = b"mesh task input"
    status = mesh.control(1, "task.submit", {"type": "hasher.sha256", "input": data,
                                             "mesh": True, "wait": True,
                                             "deadline_ms": 30_000}, timeout_s=120)
    assert status["state"] == "done", status
    assert status["accepted"]["output"] == hashlib.sha256(data).digest()
    for k in range(1, 5):  # each node has executed the decision that accepted it
        mesh.wait(k, last_decided=status["accepted"]["seq"])
    views = [mesh.control(k, "task.wait", {"id": status["id"], "timeout_ms": 60_000},
                          timeout_s=90) for k in range(1, 5)]
    assert len({(v["accepted"]["node"], v["accepted"]["output"]) for v in views}) == 1
    mesh.stop_all()
