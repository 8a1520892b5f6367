"""Refusals: capabilities not granted, bad or missing signatures, untrusted authors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from plugins_testkit import plugins_cfg, run_task, running_host

from identity import canonical
from node.tasks.api import TaskFailed

ECHO = """
@plugin.task_handler("echo")
def echo(ctx):
    return ctx.input
"""


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "meshnode.plugins" and r.levelno >= logging.WARNING]


async def test_a_capability_requested_but_not_granted_refuses_the_plugin(
        site, author, tmp_path, caplog):
    site.add("greedy", ECHO, capabilities=("tasks", "kv", "propose"), author=author)
    cfg = plugins_cfg(author, {"greedy": ["tasks", "kv"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        (entry,) = host.status()
        assert entry["state"] == "refused" and "greedy" not in host.supervisors
        assert registry.types() == []
    assert entry["error"] == ("plugin greedy: requests capabilities not granted: propose "
                              "(grant them in [plugins.greedy] grants)")
    assert any("requests capabilities not granted: propose" in m for m in _refusals(caplog))


async def test_a_call_for_a_capability_not_requested_is_refused_at_rpc_time(
        site, author, tmp_path, caplog):
    site.add("sneaky", """
@plugin.task_handler("peek")
def peek(ctx):
    try:
        plugin.kv.get(b"k")
    except NodeError as exc:
        return str(exc).encode()
    return b"no error?"
""", capabilities=("tasks",), author=author)
    cfg = plugins_cfg(author, {"sneaky": ["tasks", "kv"]})  # granted, but not requested
    async with running_host(site, cfg, tmp_path) as (host, registry):
        out = await run_task(registry, "sneaky.peek")
        assert host.supervisors["sneaky"].counters["calls_refused"] == 1
    assert out.decode().startswith("capability 'kv' is not granted to plugin sneaky")
    assert any("kv.get refused" in m for m in _refusals(caplog))


async def test_task_handlers_without_the_tasks_capability_are_refused(site, author, tmp_path):
    site.add("quiet", ECHO, capabilities=("log",), author=author)
    cfg = plugins_cfg(author, {"quiet": ["log"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["quiet"]
        assert sup.state == "refused"
        assert "capability 'tasks'" in sup.last_exit
        assert registry.types() == []


async def test_a_wrong_manifest_signature_is_refused(site, author, tmp_path, caplog):
    pkg = site.add("forged", ECHO, author=author)
    outer = canonical.decode((pkg / "plugin.manifest").read_bytes())
    outer["sig"] = bytes([outer["sig"][0] ^ 1]) + outer["sig"][1:]
    (pkg / "plugin.manifest").write_bytes(canonical.encode(outer))
    cfg = plugins_cfg(author, {"forged": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        (entry,) = host.status()
        assert registry.types() == []
    assert entry["state"] == "refused" and entry["signed"] is True
    assert "manifest signature is not valid for author " + author.identifier in entry["error"]
    assert any("signature is not valid" in m for m in _refusals(caplog))


async def test_a_manifest_claiming_another_author_is_refused(
        site, author, other_author, tmp_path):
    pkg = site.add("imposter", ECHO, author=other_author)
    outer = canonical.decode((pkg / "plugin.manifest").read_bytes())
    body = canonical.decode(outer["body"])
    body["author"] = author.identifier  # claims to be by `author`, signed by other_author
    outer["body"] = canonical.encode(body)
    (pkg / "plugin.manifest").write_bytes(canonical.encode(outer))
    cfg = plugins_cfg(author, {"imposter": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        (entry,) = host.status()
    assert entry["state"] == "refused" and "is not the identifier" in entry["error"]


async def test_a_signer_the_operator_does_not_trust_is_refused(
        site, author, other_author, tmp_path):
    site.add("stranger", ECHO, author=other_author)
    cfg = plugins_cfg(author, {"stranger": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        (entry,) = host.status()
    assert entry["state"] == "refused"
    assert f"signed by {other_author.identifier}" in entry["error"]
    assert f"trusts only {author.identifier}" in entry["error"]


async def test_code_edited_after_signing_is_refused(site, author, tmp_path):
    pkg = site.add("edited", ECHO, author=author)
    with open(pkg / "plugin.py", "a") as f:
        f.write("\nimport os  # added after signing\n")
    cfg = plugins_cfg(author, {"edited": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        (entry,) = host.status()
    assert entry["state"] == "refused" and "does not match the signed manifest" in entry["error"]


async def test_unsigned_and_ungranted_plugins_do_not_run(site, author, tmp_path):
    site.add("unsigned", ECHO, author=None)
    site.add("unlisted", ECHO, author=author)
    cfg = plugins_cfg(author, {"unsigned": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        entries = {e["name"]: e for e in host.status()}
        assert registry.types() == [] and host.supervisors == {}
    assert entries["unsigned"]["state"] == "refused"
    assert "no signed manifest" in entries["unsigned"]["error"]
    assert entries["unlisted"]["state"] == "not granted"
    assert f'author = "{author.identifier}"' in entries["unlisted"]["error"]


async def test_discovery_never_imports_plugin_code_in_the_node(site, author, tmp_path):
    import sys

    site.add("lazy", ECHO, author=author)
    cfg = plugins_cfg(author, {"lazy": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        assert await run_task(registry, "lazy.echo", b"x") == b"x"
    assert not any(m.startswith("mnp_lazy") for m in sys.modules)


async def test_a_plugin_that_fails_to_load_is_retried_with_backoff_and_logged(
        site, author, tmp_path, caplog):
    site.add("broken", "import no_such_module_anywhere\n", author=author)
    site.add("notaplugin", "plugin = 42\n", author=author)
    cfg = plugins_cfg(author, {"broken": ["tasks"], "notaplugin": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        for name in ("broken", "notaplugin"):
            sup = host.supervisors[name]
            with trio.fail_after(20):
                await sup.wait_until(lambda s: s.restarts >= 1)
            assert sup.state in ("restarting", "starting")
            assert sup.last_exit.startswith("failed to load: "), sup.last_exit
        assert registry.types() == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("plugin broken failed to load: ModuleNotFoundError: No module named "
               "'no_such_module_anywhere'" in m for m in errors), errors
    assert any("is not a plugins.sdk.Plugin (got int)" in m for m in errors), errors


async def test_code_changed_while_running_is_refused_at_the_next_restart(
        site, author, tmp_path):
    pkg = site.add("mutable", """
import os
@plugin.task_handler("work")
def work(ctx):
    if ctx.input == b"crash":
        os._exit(1)
    return b"signed code"
""", author=author)
    cfg = plugins_cfg(author, {"mutable": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        sup = host.supervisors["mutable"]
        assert await run_task(registry, "mutable.work") == b"signed code"
        source = pkg / "plugin.py"
        source.write_text(source.read_text().replace("signed code", "swapped code"))
        with pytest.raises(TaskFailed):
            await run_task(registry, "mutable.work", b"crash")
        with trio.fail_after(20):
            await sup.wait_until(lambda s: s.state == "refused")
        assert "does not match the signed manifest" in sup.last_exit
        assert registry.types() == []


async def test_a_planted_pyc_is_never_loaded(site, author, tmp_path):
    import importlib.util
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    pkg = site.add("compiled", """
@plugin.task_handler("who")
def who(ctx):
    return b"from source"
""", author=author)
    source = pkg / "plugin.py"
    evil = source.read_text().replace("from source", "from pyc!!!")
    st = source.stat()
    pyc = _code_to_timestamp_pyc(compile(evil, str(source), "exec"), int(st.st_mtime),
                                 st.st_size)
    target = Path(importlib.util.cache_from_source(str(source)))
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(pyc)  # valid for this source by mtime and size, other code
    cfg = plugins_cfg(author, {"compiled": ["tasks"]})
    async with running_host(site, cfg, tmp_path) as (host, registry):
        assert await run_task(registry, "compiled.who") == b"from source"
