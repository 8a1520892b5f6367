"""``meshnode plugin new NAME``: write a working plugin package with a test."""

from __future__ import annotations

from pathlib import Path

from plugins.protocol import check_name

__all__ = ["package_name", "scaffold"]


def package_name(name: str) -> str:
    """The Python package of plugin ``name``: ``meshnode_<name>`` (``-`` -> ``_``)."""
    return "meshnode_" + check_name(name).replace("-", "_")


_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "meshnode-plugin-{name}"
version = "0.1.0"
description = "A meshnode plugin"
requires-python = ">=3.11"
# plugins.sdk is provided by meshnode itself, in the node's environment.
dependencies = []

[project.entry-points."meshnode.plugins"]
{name} = "{pkg}.plugin:plugin"

[tool.setuptools]
packages = ["{pkg}"]

[tool.setuptools.package-data]
{pkg} = ["plugin.toml", "plugin.manifest"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_TOML = '''\
# The plugin manifest, before signing. `meshnode plugin sign {pkg}/plugin.toml --home DIR`
# writes plugin.manifest next to this file, signed by your identity over the code of
# this package. Re-sign after every code change. Capabilities: tasks, kv, pubsub,
# propose, log, network (docs/plugins.md); the node operator must grant each one.
name = "{name}"
version = "0.1.0"
description = "A meshnode plugin"
capabilities = ["tasks", "log"]
'''

_MODULE = '''\
"""The {name} plugin. Task types are served as "{name}.<type>" on the node."""

from __future__ import annotations

from plugins.sdk import Plugin, TaskContext, TaskFailed

plugin = Plugin("{name}")


@plugin.task_handler("hello")
def hello(ctx: TaskContext) -> bytes:
    """Greets its input: b"mesh" -> b"hello, mesh"."""
    if len(ctx.input) > 1024:
        raise TaskFailed("input too long", retryable=False)
    plugin.log.info("task %s, attempt %d", ctx.task_id, ctx.attempt)
    return b"hello, " + ctx.input
'''

_TEST = '''\
"""Unit tests, in-process (no node needed): pytest"""

import pytest

from {pkg}.plugin import plugin
from plugins.sdk import TaskFailed
from plugins.testing import Harness


def test_hello():
    h = Harness(plugin, capabilities=["tasks", "log"])
    assert h.run("hello", b"mesh") == b"hello, mesh"
    assert h.logs


def test_long_input_fails_for_good():
    with pytest.raises(TaskFailed) as info:
        Harness(plugin).run("hello", b"x" * 2000)
    assert info.value.retryable is False
'''

_CONFTEST = '''\
"""Make the plugin package importable when the tests run from the source tree."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
'''

_README = '''\
# {name}: a meshnode plugin

    pytest                                              # unit tests, in-process
    meshnode plugin sign {pkg}/plugin.toml --home DIR   # sign with your identity
    pip install .                                       # into the node's environment
    meshnode plugin list                                # discovered? signed? granted?

Then grant it in the node's config.toml and restart the node:

    [plugins.{name}]
    author = "mid:..."          # your identifier (`meshnode identity show --home DIR`)
    grants = ["tasks", "log"]

and run a task: `meshnode task submit {name}.hello --input '"mesh"'`.
See docs/plugins.md in the meshnode repository.
'''


def scaffold(name: str, parent: Path) -> Path:
    """Create ``parent/name`` with a plugin package, manifest source, test and README.
    Returns the directory. Raises FileExistsError, ValueError (bad name), OSError."""
    pkg = package_name(name)
    root = Path(parent) / name
    root.mkdir(parents=True)
    (root / pkg).mkdir()
    (root / "tests").mkdir()
    files = {
        "pyproject.toml": _PYPROJECT, "README.md": _README,
        f"{pkg}/__init__.py": '"""The {name} meshnode plugin."""\n',
        f"{pkg}/plugin.py": _MODULE, f"{pkg}/plugin.toml": _TOML,
        "tests/test_plugin.py": _TEST, "tests/conftest.py": _CONFTEST,
    }
    for rel, template in files.items():
        (root / rel).write_text(template.format(name=name, pkg=pkg))
    return root
