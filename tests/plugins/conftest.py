"""Fixtures for plugin tests (helpers live in plugins_testkit.py, importable by name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from plugins_testkit import Author, Site, make_author  # noqa: E402


@pytest.fixture(scope="session")
def author() -> Author:
    return make_author(b"plugin-author")


@pytest.fixture(scope="session")
def other_author() -> Author:
    return make_author(b"someone-else")


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path / "site")
