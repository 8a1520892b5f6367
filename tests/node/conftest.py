"""Fixtures for node tests."""

from __future__ import annotations

import pytest
from process_mesh import Mesh


@pytest.fixture
def mesh(tmp_path):
    """A 4-node testnet under tmp_path; every started node is killed at the end."""
    m = Mesh(tmp_path / "tn")
    yield m
    for k in list(m.procs):
        m.kill(k)
